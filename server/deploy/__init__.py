"""Running a fleet of replicas: the balancer's configuration (``haproxy.cfg.template``,
rendered by ``balancer``) and a fleet on loopback (``python -m server.deploy.local``)."""
