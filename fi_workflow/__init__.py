"""The workflow side of the project: what Snakemake's rules call, kept out of the research package
`fi` (every stage of `fi` runs without Snakemake).

  run       a job -> its rule's adapter, on a thread of its own with its own log (Job, run_job)
  jobs      one adapter per rule: the job's files and parameters -> the fi function's arguments
  codehash  the code each rule's jobs run, and its hash (the rules' params.code; no torch)
"""
