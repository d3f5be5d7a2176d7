rule finetune:
    input:
        pretrain=f"{EXP_DIR}/runs/{{run}}/pretrain/done.json",
        data=lambda w: data_marker("train-set", w.train_set),
    output:
        f"{EXP_DIR}/runs/{{run}}/finetune/{{train_set}}~{{regime}}/done.json",
    log:
        f"{EXP_DIR}/runs/{{run}}/logs/finetune/{{train_set}}~{{regime}}.log",
    benchmark:
        f"{EXP_DIR}/runs/{{run}}/benchmarks/finetune/{{train_set}}~{{regime}}.tsv"
    threads: lambda w: stage_threads(w.run, "finetune")
    params:
        run_dir=lambda w: run_dir(w.run),
    localrule: True
    shell:
        "metapretrain finetune --run-dir {params.run_dir:q} --train-set {wildcards.train_set} "
        "--regime {wildcards.regime} --threads {threads} >> {log:q} 2>&1"


rule ner_table:
    input:
        finetune_targets(),
    output:
        csv=f"{EXP_DIR}/ner/results.csv",
        md=f"{EXP_DIR}/ner/table.md",
    log:
        f"{EXP_DIR}/logs/ner_table.log",
    benchmark:
        f"{EXP_DIR}/benchmarks/ner_table.tsv"
    params:
        exp_dir=lambda w: EXP_DIR,
    localrule: True
    shell:
        "metapretrain ner-table --experiment-dir {params.exp_dir:q} --out {params.exp_dir:q}/ner > {log:q} 2>&1"
