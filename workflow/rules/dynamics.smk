rule dynamics:
    input:
        f"{EXP_DIR}/runs/{{run}}/pretrain/done.json",
    output:
        f"{EXP_DIR}/runs/{{run}}/dynamics/done.json",
    log:
        f"{EXP_DIR}/runs/{{run}}/logs/dynamics.log",
    benchmark:
        f"{EXP_DIR}/runs/{{run}}/benchmarks/dynamics.tsv"
    threads: lambda w: stage_threads(w.run, "dynamics")
    params:
        run_dir=lambda w: run_dir(w.run),
        data=lambda w: tok_dir(RUNS[w.run].tok_id),
    localrule: True
    shell:
        "metapretrain dynamics --run-dir {params.run_dir:q} --data {params.data:q} --threads {threads} >> {log:q} 2>&1"
