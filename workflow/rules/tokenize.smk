rule tokenize:
    input:
        cfg=f"{EXP_DIR}/tokenize/{{tok}}.yaml",
        data=lambda w: data_marker("tokenize", w.tok),
    output:
        done=f"{EXP_DIR}/tokenize/{{tok}}/done.json",
    log:
        f"{EXP_DIR}/logs/tokenize/{{tok}}.log",
    benchmark:
        f"{EXP_DIR}/benchmarks/tokenize/{{tok}}.tsv"
    params:
        out=lambda w: tok_dir(w.tok),
    localrule: True
    shell:
        "metapretrain tokenize --config {input.cfg} --out {params.out} > {log} 2>&1"
