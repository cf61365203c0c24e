"""fedrouter: task-centric personalized federated fine-tuning of language models on Flower."""

from fedrouter_app.method_packages import install_finder

# The methods are imported as fedrouter_app.strategies and fedrouter_app.clients in every layout.
install_finder()
