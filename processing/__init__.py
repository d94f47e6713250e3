"""kvcap processing: video reading, the AI-Hub corpus through `datasets`, the feature cache and the processor.

The modules are flat and import each other with single-dot imports only, so the folder's files can be copied
to a Hub repository as they are.
"""
