# Only done.json is a declared output: Snakemake deletes declared outputs before
# re-running a job, and checkpoints/metrics must survive for the run to resume.
rule pretrain:
    input:
        cfg=f"{EXP_DIR}/runs/{{run}}/config.resolved.yaml",
        tok=lambda w: f"{tok_dir(RUNS[w.run].tok_id)}/done.json",
    output:
        f"{EXP_DIR}/runs/{{run}}/pretrain/done.json",
    log:
        f"{EXP_DIR}/runs/{{run}}/logs/pretrain.log",
    benchmark:
        f"{EXP_DIR}/runs/{{run}}/benchmarks/pretrain.tsv"
    threads: lambda w: stage_threads(w.run, "pretrain")
    params:
        run_dir=lambda w: run_dir(w.run),
        data=lambda w: tok_dir(RUNS[w.run].tok_id),
    localrule: True
    shell:
        "metapretrain pretrain --run-dir {params.run_dir:q} --data {params.data:q} --threads {threads} >> {log:q} 2>&1"
