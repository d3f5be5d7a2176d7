# The DAG's first rule: each job checks, and on a machine without a mirror downloads into the
# download cache, what one tokenize id (`tokenize/<tok id>`) or one UNER train set
# (`train-set/<name>`) reads, before any compute job starts. Nothing else downloads: compute jobs
# may run on SLURM nodes without internet. A marker is named by what it covers and the rule has no
# params or tracked inputs, so it is written once, when a first dependent is about to run; its
# dependents take it `ancient`, so a marker that is missing or written again never re-runs
# finished work. (Params here would be worse than useless: when they changed, Snakemake 9 would
# re-run this job and then skip every job downstream of it for that invocation.)
rule data:
    output:
        str(paths.data_marker(EXP.name, "{part}", "{name}")),
    log:
        str(paths.log_file(EXP_DIR, "data/{part}/{name}")),
    benchmark:
        str(paths.benchmark_file(EXP_DIR, "data/{part}/{name}"))
    wildcard_constraints:
        part="tokenize|train-set",
        name="[A-Za-z0-9_.-]+",
    priority: 100
    localrule: True
    # `run:` + shell(), not `shell:`: the experiment file and the overrides are the driver's own globals, and
    # params (which the lint asks for) must stay empty here (above).
    run:
        shell("metapretrain data fetch {EXPERIMENT_FILE:q} --overrides {DATA_OVERRIDES:q} --{wildcards.part} "
              "{wildcards.name:q} --record {output:q} 2>&1 | tee {log:q}")
