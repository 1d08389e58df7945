"The OpenAI-compatible server, cut by concern (one notebook per module, nbs/07a..07e): protocol, store, engine, jobs, app."
# Not generated: re-exports the names other modules, tests, benchmarks and docs import from `finetune_nb.serve`.
from .protocol import APIError, new_id, valid_id, ChatRequest, JobRequest, DeployRequest, InferenceRequest, SimpleJobRequest
from .store import Store, Files
from .engine import ModelPool, Batcher, GenRequest, Models, Chat, load_pair, parse_model_map
from .jobs import Jobs, check_hyperparameters, training_configs
from .app import Service, create_app, run_server, ServerThread, owner_of_key

__all__ = ["APIError", "new_id", "valid_id", "ChatRequest", "JobRequest", "DeployRequest", "InferenceRequest", "SimpleJobRequest",
           "Store", "Files", "ModelPool", "Batcher", "GenRequest", "Models", "Chat", "load_pair", "parse_model_map",
           "Jobs", "check_hyperparameters", "training_configs", "Service", "create_app", "run_server", "ServerThread", "owner_of_key"]
