"""`make bench`: onnxforge side by side with what users would pick instead, on this machine, in one run."""
