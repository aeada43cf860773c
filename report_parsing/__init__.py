"""Report parsing: free-text CT reports -> sections, sentences, anatomies, negation, the 18 CT-RATE
labels and per-anatomy abnormal flags (spaCy pipeline in ``report_parsing.pipeline``; cohort tables in
``report_parsing.tables``; see docs/report_parsing.md)."""
