"""The benchmark pages of docs/benchmarks/, a function per page, each made from result files in
``benchmarks/results/``; ``python docs/generate_benchmarks.py`` writes them."""
