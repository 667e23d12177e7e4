"""The end-to-end recipe: build -> score (LLM feedback) -> train -> evaluate, resumable stage by stage."""
