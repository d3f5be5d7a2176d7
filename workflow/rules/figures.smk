rule figures:
    input:
        grid=f"{EXP_DIR}/grid.yaml",
        pretrain=[f"{run_dir(r.run_id)}/pretrain/done.json" for r in EXP.runs],
        dynamics=dynamics_targets(),
        ner=[f"{EXP_DIR}/ner/results.csv"] if finetune_targets() else [],
    output:
        index=f"{EXP_DIR}/figures/index.json",
    log:
        f"{EXP_DIR}/logs/figures.log",
    localrule: True
    shell:
        "metapretrain figures --experiment-dir {EXP_DIR:q} --config {EXPERIMENT_FILE:q} > {log:q} 2>&1"
