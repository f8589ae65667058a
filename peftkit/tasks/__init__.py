"""Task definitions and data loading: reading CSV / TSV / JSONL files, finding the columns a task needs,
mapping labels, tokenising; the bundled SST-2 data set."""
