# -*- coding: utf-8 -*-

# stdlib
from dataclasses import dataclass

# Zato
from zato.common.typing_ import list_, optional
from zato.server.service import Model, Service

# ###########################################################################


@dataclass(init=False)
class GetClientRequest(Model):
    client_id: int


@dataclass(init=False)
class GetClientResponse(Model):
    name:    str
    email:   str
    segment: str

# ###########################################################################


class GetClient(Service):
    """ The data-model page's first example.
    """
    class SimpleIO:
        input  = GetClientRequest
        output = GetClientResponse

    def handle(self):

        # Enable type checking and type completion
        request = self.request.input # type: GetClientRequest

        # Log details of our request
        self.logger.info('Processing client `%s`', request.client_id)

        # Produce our response
        response = GetClientResponse()
        response.name    = 'Jane Doe'
        response.email   = 'hello@example.com'
        response.segment = 'RNZ'

        # Return the response to our caller
        self.response.payload = response

# ###########################################################################


@dataclass(init=False)
class Phone(Model):
    imei: str
    owner_id: int
    owner_name: str


@dataclass(init=False)
class GetPhoneListRequest(Model):
    client_id: int
    region: optional[str]


@dataclass(init=False)
class GetPhoneListResponse(Model):
    phone_list: list_[Phone]
    response_type: str

# ###########################################################################


class GetPhoneDetails(Service):
    """ Nested models in a list, declared at class level as in Zato 3.2's later pages.
    """
    input = GetPhoneListRequest
    output = GetPhoneListResponse

    def handle(self):

        request = self.request.input # type: GetPhoneListRequest

        phone1 = Phone()
        phone1.imei = '123'
        phone1.owner_id = request.client_id
        phone1.owner_name = 'John Doe'

        phone2 = Phone()
        phone2.imei = '789'
        phone2.owner_id = request.client_id
        phone2.owner_name = 'Jane Doe'

        response = GetPhoneListResponse()
        response.response_type = 'RZH' + (request.region or '')
        response.phone_list = [phone1, phone2]

        self.response.payload = response

# ###########################################################################


@dataclass(init=False)
class Order(Model):
    order_id: int
    phones: list_[Phone]
    note: optional[str]


class CreateOrder(Service):
    """ A model with a nested list on input: every bad field is named in one 400.
    """
    input = Order

    def handle(self):
        order = self.request.input # type: Order
        self.response.payload = {
            'order_id': order.order_id,
            'imeis': [phone.imei for phone in order.phones],
            'note': order.note,
        }

# ###########################################################################
