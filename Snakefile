# metapretrain: one DAG for a whole ablation grid. Rules live in workflow/rules/;
# the grid (config/config.yaml, or --configfile X.yaml) is expanded in common.smk.
# `rule all` stays here: Snakemake takes its default target from the main Snakefile only.
include: "workflow/rules/common.smk"


rule all:
    input:
        all_targets(),


include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/dynamics.smk"
include: "workflow/rules/figures.smk"
