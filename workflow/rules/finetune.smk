rule finetune:
    input:
        pretrain=str(PRETRAIN.done),
        data=lambda w: data_marker("train-set", w.train_set),
    output:
        str(FINETUNE.done),
    log:
        str(FINETUNE.log),
    benchmark:
        str(FINETUNE.benchmark)
    threads: lambda w: stage_threads(w.run, "finetune")
    params:
        run_dir=lambda w: run_dir(w.run),
    localrule: True
    shell:
        "metapretrain finetune --run-dir {params.run_dir:q} --train-set {wildcards.train_set} "
        "--regime {wildcards.regime} --threads {threads} >> {log:q} 2>&1"


# A checkpoint sweep (finetune.checkpoints): the run fine-tuned from its own checkpoint of an earlier step.
rule finetune_step:
    input:
        pretrain=str(PRETRAIN.done),
        data=lambda w: data_marker("train-set", w.train_set),
    output:
        str(FINETUNE_STEP.done),
    log:
        str(FINETUNE_STEP.log),
    benchmark:
        str(FINETUNE_STEP.benchmark)
    threads: lambda w: stage_threads(w.run, "finetune")
    params:
        run_dir=lambda w: run_dir(w.run),
    localrule: True
    shell:
        "metapretrain finetune --run-dir {params.run_dir:q} --train-set {wildcards.train_set} "
        "--regime {wildcards.regime} --step {wildcards.ckpt_step} --threads {threads} >> {log:q} 2>&1"


# A vanilla run fine-tuned from its checkpoint matched to a meta run's final compute (metapretrain.matching).
# Both runs' pretraining must be done: the meta run's final count is the target.
rule finetune_matched:
    input:
        pretrain=str(PRETRAIN.done),
        meta=lambda w: str(stages.pretrain(matched(w).meta_dir).done),
        data=lambda w: data_marker("train-set", w.train_set),
    output:
        str(FINETUNE_MATCHED.done),
    log:
        str(FINETUNE_MATCHED.log),
    benchmark:
        str(FINETUNE_MATCHED.benchmark)
    threads: lambda w: stage_threads(w.run, "finetune")
    params:
        run_dir=lambda w: run_dir(w.run),
        match_run=lambda w: str(matched(w).meta_dir),
    localrule: True
    shell:
        "metapretrain finetune --run-dir {params.run_dir:q} --train-set {wildcards.train_set} "
        "--regime {wildcards.regime} --match-run {params.match_run:q} --match-unit {wildcards.unit} "
        "--threads {threads} >> {log:q} 2>&1"


rule ner_table:
    input:
        done_targets("finetune"),
        matched_targets(),
    output:
        csv=NER_RESULTS,
        md=str(paths.ner_dir(EXP.name) / "table.md"),
    log:
        str(paths.log_file(EXP_DIR, "ner_table")),
    benchmark:
        str(paths.benchmark_file(EXP_DIR, "ner_table"))
    params:
        exp_dir=lambda w: EXP_DIR,
    localrule: True
    shell:
        "metapretrain ner-table --experiment-dir {params.exp_dir:q} --out {params.exp_dir:q}/ner > {log:q} 2>&1"
