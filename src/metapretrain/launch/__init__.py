"""Running stage work through submitit: debug (in-process), local (subprocess) or SLURM."""
