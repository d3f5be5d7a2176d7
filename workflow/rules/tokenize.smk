rule tokenize:
    input:
        f"{EXP_DIR}/tokenize/{{tok}}.yaml",
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
        "metapretrain tokenize --config {input} --out {params.out} > {log} 2>&1"
