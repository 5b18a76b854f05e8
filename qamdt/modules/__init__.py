"""Small neural-network building blocks shared by the models of several packages."""
