"""An example service (README, "Testing a service"); its unit test is test_greeter.py."""

from oxbus import NotFound, Service


class Greet(Service):
    name = 'greeter.greet'
    input = 'name', '-greeting'
    output = 'text', 'visits'

    def handle(self):
        name = self.request.input.name
        crm = self.out.rest['CRM'].conn.get(self.cid, params={'name': name})
        if crm.status_code == 404:
            raise NotFound('no customer named %s' % name)
        visits = self.cache.default.incr('visits:' + name)
        greeting = self.request.input.greeting or 'Hello'
        self.response.payload = {'text': '%s, %s %s!' % (greeting, crm.data['title'], name),
                                 'visits': visits}
