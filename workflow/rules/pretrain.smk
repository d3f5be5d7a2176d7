# Only done.json is a declared output: Snakemake deletes declared outputs before
# re-running a job, and checkpoints/metrics must survive for the run to resume.
rule pretrain:
    input:
        cfg=RUN_CONFIG,
        tok=lambda w: str(stages.tokenize(EXP.name, RUNS[w.run].tok_id).done),
    output:
        str(PRETRAIN.done),
    log:
        str(PRETRAIN.log),
    benchmark:
        str(PRETRAIN.benchmark)
    threads: lambda w: stage_threads(w.run, "pretrain")
    params:
        run_dir=lambda w: run_dir(w.run),
        data=lambda w: tok_dir(RUNS[w.run].tok_id),
    localrule: True
    shell:
        "metapretrain pretrain --run-dir {params.run_dir:q} --data {params.data:q} --threads {threads} >> {log:q} 2>&1"
