"""Corpus cleaning: repair, language identification, quality rules, exact and near deduplication."""
