rule dynamics:
    input:
        str(PRETRAIN.done),
    output:
        str(DYNAMICS.done),
    log:
        str(DYNAMICS.log),
    benchmark:
        str(DYNAMICS.benchmark)
    threads: lambda w: stage_threads(w.run, "dynamics")
    params:
        run_dir=lambda w: run_dir(w.run),
        data=lambda w: tok_dir(RUNS[w.run].tok_id),
    localrule: True
    shell:
        "metapretrain dynamics --run-dir {params.run_dir:q} --data {params.data:q} --threads {threads} >> {log:q} 2>&1"
