//! The machine's RabbitMQ (127.0.0.1:5672, guest/guest) as tests use it: their own queues
//! and exchanges (a random suffix each, deleted when the [`Rabbit`] is dropped), publishes
//! with publisher confirms (a publish returned is on the broker), and the queue's counts.
//! A test that cannot reach the broker fails loudly.

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The broker's address as a channel definition gives it.
pub const ADDRESS: &str = "amqp://127.0.0.1:5672/%2f";

/// A connection to the broker and the queues and exchanges this test declared.
pub struct Rabbit {
    conn: Connection,
    ch: Channel,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

/// A name of its own for a test's queue or exchange: `prefix` and a random suffix.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("/dev/urandom");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("oxbus-it-{prefix}-{hex}")
}

impl Rabbit {
    /// Connects to `amqp_url` (e.g. [`ADDRESS`] with guest/guest: `amqp://guest:guest@…`).
    pub async fn connect() -> Rabbit {
        let conn = Connection::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            ConnectionProperties::default(),
        )
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest) is needed by this test");
        let ch = conn.create_channel().await.expect("a channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Rabbit {
            conn,
            ch,
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        }
    }

    /// Declares queue `name` (durable) with `args` (e.g. `x-queue-type`,
    /// `x-dead-letter-exchange`), deleted on drop.
    pub async fn queue(&self, name: &str, args: &[(&str, &str)]) {
        let mut table = BTreeMap::new();
        for (k, v) in args {
            table.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
        }
        self.ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::from(table),
            )
            .await
            .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
        self.queues.lock().unwrap().push(name.to_owned());
    }

    /// Declares a fanout exchange `name` bound to `queue` (a dead-letter exchange), deleted
    /// on drop.
    pub async fn fanout_to(&self, name: &str, queue: &str) {
        self.ch
            .exchange_declare(
                name.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
        self.exchanges.lock().unwrap().push(name.to_owned());
        self.ch
            .queue_bind(
                queue.into(),
                name.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("bind {queue} to {name}: {e}"));
    }

    /// Publishes `body` to `queue` (the default exchange) and waits for the broker's confirm.
    pub async fn publish(&self, queue: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props.with_delivery_mode(2),
            )
            .await
            .unwrap_or_else(|e| panic!("publish to {queue}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("confirm of a publish to {queue}: {e}"));
        assert!(confirm.is_ack(), "the broker nacked a publish to {queue}");
    }

    /// (ready messages, consumers) of `queue`, by a passive declare.
    pub async fn counts(&self, queue: &str) -> (u32, u32) {
        let ch = self.conn.create_channel().await.expect("a channel");
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        let _ = ch.close(200, "OK".into()).await;
        (q.message_count(), q.consumer_count())
    }

    /// Takes every ready message of `queue` (acked), as (body, headers' `i` if any).
    pub async fn drain(&self, queue: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|e| panic!("basic.get {queue}: {e}"))
        {
            out.push(m.delivery.data.clone());
        }
        out
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        let exchanges = std::mem::take(&mut *self.exchanges.lock().unwrap());
        // Deleted through a connection and a runtime of their own: the test's runtime may be
        // blocked here (a current-thread one drops this inside its only thread).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(
                    "amqp://guest:guest@127.0.0.1:5672/%2f",
                    ConnectionProperties::default(),
                )
                .await
                else {
                    return;
                };
                let Ok(ch) = conn.create_channel().await else {
                    return;
                };
                for q in queues {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for e in exchanges {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
                let _ = conn.close(200, "OK".into()).await;
            });
        })
        .join();
    }
}
