"""AMD SVM architecture: the VMCB byte layout, exit codes, event injection, nested paging."""
