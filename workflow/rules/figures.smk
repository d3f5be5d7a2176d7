# Paper figures and tables from the runs' files only (metrics.jsonl, dynamics CSVs, ner/results.csv;
# never wandb). `snakemake --report report.html` shows every PNG and table below with the captions in
# workflow/report/ (the `reports` extra, i.e. pygments, must be installed); claims.md (figures/claims.py: does
# the experiment support the paper's claims?) comes first.
report: "../report/workflow.rst"


rule figures:
    input:
        grid=GRID_FILE,
        pretrain=done_targets("pretrain"),
        dynamics=done_targets("dynamics"),
        ner=[NER_RESULTS] if done_targets("finetune") else [],
    output:
        index=f"{FIGURES_DIR}/index.json",
        claims=report(f"{FIGURES_DIR}/claims.md", caption="../report/claims.rst", category="0. Claims"),
        claims_json=f"{FIGURES_DIR}/claims.json",
        loss=figure_group("loss", "loss.rst", "1. Pretraining loss"),
        speedup=figure_group("speedup", "speedup.rst", "2. Speedup to equal loss"),
        ner=figure_group("ner", "ner.rst", "3. Universal NER"),
        dynamics=figure_group("dynamics", "dynamics.rst", "4. Learning dynamics"),
        finetune_speed=figure_group("finetune_speed", "finetune_speed.rst", "4a. Fine-tuning speed"),
        episodic=figure_group("episodic", "episodic.rst", "4b. Episodic curves"),
        domains=figure_group("domains", "domains.rst", "6. Per-domain held-out loss"),
        tables=report(directory(f"{FIGURES_DIR}/tables"), patterns=["{table}.html"], caption="../report/tables.rst",
                      category="5. Tables", labels={"table": "{table}"}),
    log:
        str(paths.log_file(EXP_DIR, "figures")),
    benchmark:
        str(paths.benchmark_file(EXP_DIR, "figures"))
    params:
        exp_dir=lambda w: EXP_DIR,
        experiment_file=EXPERIMENT_FILE,
    localrule: True
    shell:
        "metapretrain figures --experiment-dir {params.exp_dir:q} --config {params.experiment_file:q} > {log:q} 2>&1"
