"""Many runs and their results: the run loop that keeps finished results safe
(session, sweeps, torchrun), what is written (reports, JSON, plots, checkpoints),
and comparing result files."""
