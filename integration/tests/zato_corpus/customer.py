# -*- coding: utf-8 -*-

# stdlib
from datetime import date

# Zato
from zato.common.exception import BadRequest, NotFound
from zato.server.service import AsIs, Bool, Date, Int, List, Service

# ###########################################################################

CUSTOMERS = {
    1: {'name': 'Jane Doe', 'segment': 'RNZ', 'since': date(2019, 4, 1)},
    2: {'name': 'John Doe', 'segment': 'BLK', 'since': date(2021, 11, 15)},
}

# ###########################################################################


class GetCustomer(Service):
    """ Typed elements, an element default, Zato-style exceptions and REST verbs.
    """
    name = 'crm.customer.get'

    class SimpleIO:
        input_required = Int('customer_id'),
        input_optional = Bool('needs_details'), Int('page_size', default=10), AsIs('is_raw')
        output_required = 'name',
        output_optional = 'segment', Date('since'), Int('page_size'), AsIs('is_raw')

    def handle_GET(self):
        customer_id = self.request.input.customer_id
        if customer_id < 1:
            raise BadRequest(self.cid, 'Invalid customer_id `{}`'.format(customer_id))

        customer = CUSTOMERS.get(customer_id)
        if not customer:
            raise NotFound(self.cid, 'No such customer `{}`'.format(customer_id))

        self.response.payload.name = customer['name']
        self.response.payload.page_size = self.request.input.page_size
        self.response.payload.is_raw = self.request.input.is_raw

        if self.request.input.needs_details:
            self.response.payload.segment = customer['segment']
            self.response.payload.since = customer['since']

    def handle_DELETE(self):
        self.response.status_code = 204

# ###########################################################################


class ListCustomers(Service):
    """ A list response: output_repeated and the payload's slice assignment.
    """
    name = 'crm.customer.list'

    class SimpleIO:
        input_optional = List('ids'),
        output_required = Int('id'), 'name'
        output_repeated = True

    def handle(self):
        ids = self.request.input.ids or sorted(CUSTOMERS)
        out = []
        for customer_id in ids:
            customer = CUSTOMERS.get(int(customer_id))
            if customer:
                out.append({'id': customer_id, 'name': customer['name'], 'internal': 1})
        self.response.payload[:] = out

# ###########################################################################


class CreateCustomer(Service):
    """ A custom status, headers and the request's HTTP details.
    """
    name = 'crm.customer.create'

    class SimpleIO:
        input_required = 'name',
        output_required = Int('id'), 'name'

    def handle(self):
        new_id = max(CUSTOMERS) + 1
        self.response.payload.id = new_id
        self.response.payload.name = self.request.input.name
        self.response.status_code = 201
        self.response.headers['Location'] = '/crm/customer/{}'.format(new_id)
        self.response.headers['X-Method'] = self.request.http.method

# ###########################################################################
