# Paper figures and tables from the runs' files only (metrics.jsonl, dynamics CSVs, ner/results.csv;
# never wandb). `snakemake --report report.html` shows every PNG and table below with the captions in
# workflow/report/ (the `reports` extra, i.e. pygments, must be installed).
report: "../report/workflow.rst"


rule figures:
    input:
        grid=f"{EXP_DIR}/grid.yaml",
        pretrain=[f"{run_dir(r.run_id)}/pretrain/done.json" for r in EXP.runs],
        dynamics=dynamics_targets(),
        ner=[f"{EXP_DIR}/ner/results.csv"] if finetune_targets() else [],
    output:
        index=f"{FIGURES_DIR}/index.json",
        loss=figure_group("loss", "loss.rst", "1. Pretraining loss"),
        speedup=figure_group("speedup", "speedup.rst", "2. Speedup to equal loss"),
        ner=figure_group("ner", "ner.rst", "3. Universal NER"),
        dynamics=figure_group("dynamics", "dynamics.rst", "4. Learning dynamics"),
        tables=report(directory(f"{FIGURES_DIR}/tables"), patterns=["{table}.html"], caption="../report/tables.rst",
                      category="5. Tables", labels={"table": "{table}"}),
    log:
        f"{EXP_DIR}/logs/figures.log",
    benchmark:
        f"{EXP_DIR}/benchmarks/figures.tsv"
    params:
        exp_dir=lambda w: EXP_DIR,
        experiment_file=EXPERIMENT_FILE,
    localrule: True
    shell:
        "metapretrain figures --experiment-dir {params.exp_dir:q} --config {params.experiment_file:q} > {log:q} 2>&1"
