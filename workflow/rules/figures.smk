# Paper figures and tables from the runs' files only (metrics.jsonl, dynamics CSVs, ner/results.csv;
# never wandb). `snakemake --report report.html` shows every PNG and table below with the captions in
# workflow/report/ (the `reports` extra, i.e. pygments, must be installed).
report: "../report/workflow.rst"

FIGURES_DIR = f"{EXP_DIR}/figures"


def _figure_group(group, caption, category):
    return report(directory(f"{FIGURES_DIR}/{group}"), patterns=["{figure}.png"], caption=f"../report/{caption}",
                  category=category, labels={"figure": "{figure}"})


rule figures:
    input:
        grid=f"{EXP_DIR}/grid.yaml",
        pretrain=[f"{run_dir(r.run_id)}/pretrain/done.json" for r in EXP.runs],
        dynamics=dynamics_targets(),
        ner=[f"{EXP_DIR}/ner/results.csv"] if finetune_targets() else [],
    output:
        index=f"{FIGURES_DIR}/index.json",
        loss=_figure_group("loss", "loss.rst", "1. Pretraining loss"),
        speedup=_figure_group("speedup", "speedup.rst", "2. Speedup to equal loss"),
        ner=_figure_group("ner", "ner.rst", "3. Universal NER"),
        dynamics=_figure_group("dynamics", "dynamics.rst", "4. Learning dynamics"),
        tables=report(directory(f"{FIGURES_DIR}/tables"), patterns=["{table}.html"], caption="../report/tables.rst",
                      category="5. Tables", labels={"table": "{table}"}),
    log:
        f"{EXP_DIR}/logs/figures.log",
    localrule: True
    shell:
        "metapretrain figures --experiment-dir {EXP_DIR:q} --config {EXPERIMENT_FILE:q} > {log:q} 2>&1"
