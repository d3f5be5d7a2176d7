rule tokenize:
    input:
        cfg=str(paths.tokenize_config(EXP.name, "{tok}")),
        data=lambda w: data_marker("tokenize", w.tok),
    output:
        done=str(TOKENIZE.done),
    log:
        str(TOKENIZE.log),
    benchmark:
        str(TOKENIZE.benchmark)
    params:
        out=lambda w: tok_dir(w.tok),
    localrule: True
    shell:
        "metapretrain tokenize --config {input.cfg} --out {params.out} > {log} 2>&1"
