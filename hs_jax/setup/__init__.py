"""What a run is made of, after the door: its identity and the workdir checks made before
anything loads (`identity`: run.json, the task file, restart), and the frozen `Setup` a
method receives, assembled from the task, protocol, base model, expert pool, engine and
scorer (`assembly`)."""
