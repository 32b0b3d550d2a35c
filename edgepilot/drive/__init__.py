"""The onboard loop and its parts: what the car, replay and the cloud's gate all run."""
