"""The robot-sim: a task of the multi-rate DMC suite as "the robot", in closed loop through
the estimation service (``python -m clients.robot_sim --help``).

Every control tick it streams the robot's proprioception, sends camera frames on the task's
missing-frames schedule (optionally after a random latency, so they arrive late and out of
order), asks the service for the policy's action and applies it; it reports the episode
return, the tracking of the hidden physical state (the service's estimate and its 90%
intervals against the simulator's truth, which is never sent), the camera delivery and the
round-trip latencies. ``--in-process BUNDLE`` runs the same loop on the
bundle's online filter in this process (the reference the service must reproduce).
"""
