"""Built-in scenarios (YAML files). Installed as the package ``brainnet.scenarios`` so that
``brainnet run NAME`` finds them from any working directory."""
