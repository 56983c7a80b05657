"""What a merge is published with: the merged model's card (a "Safety evaluation" section and Hub
metadata) and the plot of a sweep or search (the safety/task trade-off).

The face imports nothing: import the module you need (``mergekit_safety.publish.model_card``).
"""
