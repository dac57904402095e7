"""Starting the processes of a job: locally (torchrun) now, Slurm next."""
