"""Dataset mode at scale: one case files-to-files, the manifest, the rerun plan, shards, local and Ray engines,
the summary (README "Cohorts")."""
