"""Tables and plots from run folders and evaluation summaries."""
