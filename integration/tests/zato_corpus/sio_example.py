# -*- coding: utf-8 -*-

# Zato
from zato.server.service import Service

# ###########################################################################


class MyService(Service):
    """ The SimpleIO chapter's first example: plain input and output declarations.
    """
    class SimpleIO:
        input = 'name', 'type'
        output = 'is_allowed'

    def get_data(self):
        if self.request.input.name == 'Wendy' and self.request.input.type == 'AXC':
            return True
        return False

    def handle(self):
        self.response.payload.is_allowed = self.get_data()

# ###########################################################################


class MyServiceRequired(Service):
    """ The older form: input_required / output_required, and an optional element.
    """
    class SimpleIO:
        input_required = ('name', 'type')
        input_optional = ('comment',)
        output_required = ('is_allowed',)
        output_optional = ('comment',)

    def handle(self):
        self.response.payload.is_allowed = self.request.input.name == 'wendy'
        self.response.payload.comment = self.request.input.comment or 'none given'

# ###########################################################################
