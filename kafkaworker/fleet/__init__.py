"""The fleet: every worker process of every app, seen and commanded through Kafka itself.

The design is Karafka Web UI's: each process reports to a topic, one consumer materializes
the state, commands and errors have topics of their own. Here:

- worker side (opt-in, `fleet.enabled`): reporter.py (FleetReporter: the "kw-fleet" thread,
  its producer and commands consumer), report.py (what a report says, pure), control.py
  (commands carried out in this process through ProcessStatus's operator actions);
- dashboard side (`kafkaworker dashboard`): dashboard.py (FleetDashboard: the HTTP answers),
  reader.py (FleetReader: the consumer of the fleet's topics), view.py (FleetView: the
  materialized state, pure), cluster.py (ClusterWatch: groups and lag from the brokers),
  explorer.py (the DLQ explorer);
- both: topics.py (names, configs, creation), commands.py (commands, their signature, and the
  state they add up to, pure).

docs/fleet.md documents the reports, the JSON API and the commands.
"""
