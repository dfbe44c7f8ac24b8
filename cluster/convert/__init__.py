"""The LLM-to-SLM conversion loop: the usage log's format and the stages that turn it into specialists."""
