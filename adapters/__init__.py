"""The broker's edges: the embedded SFTP server, the push client, the folder watcher.

Only this package talks to the network or imports asyncssh; ``broker`` stays pure.
"""
