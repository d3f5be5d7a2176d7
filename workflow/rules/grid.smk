# The grid's own files, written by the driver from the expanded grid (no job process needed):
# grid.yaml, each run's config.resolved.yaml + run.json, each tokenize config.
rule grid:
    output:
        GRID_FILE,
    log:
        str(paths.log_file(EXP_DIR, "grid")),
    params:
        runs=lambda w: {r.run_id: r.hash for r in EXP.runs},
        compare=lambda w: EXP.compare,  # a changed compare: section rewrites grid.yaml, so the figures rebuild
    localrule: True
    run:
        write_grid_file(EXP, EXPERIMENT_FILE, output[0])
        write_log(log[0], f"{len(EXP.runs)} runs of {EXPERIMENT_FILE} -> {output[0]}")


rule run_config:
    output:
        RUN_CONFIG,
    log:
        str(paths.log_file(RUN_PATTERN, "run_config")),
    params:
        hash=lambda w: RUNS[w.run].hash,
    localrule: True
    run:
        write_run_files(EXP.name, RUNS[wildcards.run])
        write_log(log[0], f"run hash {params.hash} -> {output[0]}")


rule tokenize_config:
    output:
        str(paths.tokenize_config(EXP.name, "{tok}")),
    log:
        str(paths.log_file(EXP_DIR, "tokenize_config/{tok}")),
    params:
        # Not the data section: where the data lives is not what a tokenization is (its id has the content).
        cfg=lambda w: {k: v for k, v in TOKS[w.tok].items() if k != "data"},
    localrule: True
    run:
        write_tokenize_config(EXP, wildcards.tok, output[0])
        write_log(log[0], f"-> {output[0]}")
