"""Helpers for the end-to-end tests that run the tools in the test process."""


def forget_visualizers():
    """The configs name their visualizer 'visualizer'; mmengine keeps one instance per name
    per process, so a second in-process run would log into the first run's folder."""
    from mmengine.visualization import Visualizer
    classes = [Visualizer]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        cls._instance_dict.pop('visualizer', None)
