"""Generation: the QA-MDT pipeline and its command line."""
