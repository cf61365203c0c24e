"""The Flower apps: the ServerApp and the ClientApp, each assembling the layers below for its side."""
