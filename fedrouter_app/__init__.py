"""fedrouter: task-centric personalized federated fine-tuning of language models on Flower."""

from fedrouter_app.method_packages import check_method_packages

# Before anything imports strategies or clients: a package of another distribution with the same name fails here.
check_method_packages()
