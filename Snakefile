# metapretrain: one DAG for a whole ablation grid. Rules live in workflow/rules/;
# the grid (config/config.yaml, or --configfile X.yaml) is expanded in common.smk.
# `rule all` stays here: Snakemake takes its default target from the main Snakefile only.
#
# `snakemake --lint` reports one lint by design, "Specify a conda environment or container
# for each rule", for each rule that shells out to the `metapretrain` CLI: every rule runs the
# one package in the one environment Snakemake itself runs in (pyproject.toml, environment.yml),
# and a per-rule conda environment would install torch once per rule and could not hold the
# package itself. tests/test_snakemake.py checks that no other lint comes back.
include: "workflow/rules/common.smk"


rule all:
    input:
        all_targets(),


include: "workflow/rules/grid.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/dynamics.smk"
include: "workflow/rules/figures.smk"
