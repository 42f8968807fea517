"""The RIS domain: orders, scheduled procedure steps, MPPS, encounter links, reports.

Empty for now: the modality worklist arrives with its own issue. The package exists so that
the layout of the design card is in place from the start."""
