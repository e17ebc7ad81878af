"""Linking new mentions with the trained model: the dataset's inbox, one Dagster partition per file.

``inbox``        where new mention files (and KB changes) arrive, when a file is complete, reading one file
``link``         one file -> its rows of the `links` table, through every stage's cache, without retraining
``links_table``  the `links` table's schema, and what its stored partitions say (state, accuracy)
"""

from pipeline.linking.inbox import InboxFile, inbox_dir, list_inbox, read_inbox_file
from pipeline.linking.link import LinkReport, LinkSettings, link_inbox_file
from pipeline.linking.links_table import (
    LINKS_SCHEMA, linked_file_hashes, linked_partitions, linking_state, out_of_date_partitions, read_links,
    running_accuracy,
)

__all__ = [
    "LINKS_SCHEMA", "InboxFile", "LinkReport", "LinkSettings", "inbox_dir", "link_inbox_file", "linked_file_hashes",
    "linked_partitions", "linking_state", "list_inbox", "out_of_date_partitions", "read_inbox_file", "read_links",
    "running_accuracy",
]
