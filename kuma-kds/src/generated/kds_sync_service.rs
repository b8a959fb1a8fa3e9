/// Generated client implementations.
pub mod k_d_s_sync_service_client {
    #![allow(
        unused_variables,
        dead_code,
        missing_docs,
        clippy::wildcard_imports,
        clippy::let_unit_value,
    )]
    use tonic::codegen::*;
    use tonic::codegen::http::Uri;
    /// Resource sync between global and a zone, both ways, as Envoy delta xDS.
    #[derive(Debug, Clone)]
    pub struct KDSSyncServiceClient<T> {
        inner: tonic::client::Grpc<T>,
    }
    impl<T> KDSSyncServiceClient<T>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<StdError>,
        T::ResponseBody: Body<Data = Bytes> + std::marker::Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + std::marker::Send,
    {
        pub fn new(inner: T) -> Self {
            let inner = tonic::client::Grpc::new(inner);
            Self { inner }
        }
        pub fn with_origin(inner: T, origin: Uri) -> Self {
            let inner = tonic::client::Grpc::with_origin(inner, origin);
            Self { inner }
        }
        pub fn with_interceptor<F>(
            inner: T,
            interceptor: F,
        ) -> KDSSyncServiceClient<InterceptedService<T, F>>
        where
            F: tonic::service::Interceptor,
            T::ResponseBody: Default,
            T: tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<
                    <T as tonic::client::GrpcService<tonic::body::Body>>::ResponseBody,
                >,
            >,
            <T as tonic::codegen::Service<
                http::Request<tonic::body::Body>,
            >>::Error: Into<StdError> + std::marker::Send + std::marker::Sync,
        {
            KDSSyncServiceClient::new(InterceptedService::new(inner, interceptor))
        }
        /// Compress requests with the given encoding.
        ///
        /// This requires the server to support it otherwise it might respond with an
        /// error.
        #[must_use]
        pub fn send_compressed(mut self, encoding: CompressionEncoding) -> Self {
            self.inner = self.inner.send_compressed(encoding);
            self
        }
        /// Enable decompressing responses.
        #[must_use]
        pub fn accept_compressed(mut self, encoding: CompressionEncoding) -> Self {
            self.inner = self.inner.accept_compressed(encoding);
            self
        }
        /// Limits the maximum size of a decoded message.
        ///
        /// Default: `4MB`
        #[must_use]
        pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
            self.inner = self.inner.max_decoding_message_size(limit);
            self
        }
        /// Limits the maximum size of an encoded message.
        ///
        /// Default: `usize::MAX`
        #[must_use]
        pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
            self.inner = self.inner.max_encoding_message_size(limit);
            self
        }
        pub async fn global_to_zone_sync(
            &mut self,
            request: impl tonic::IntoStreamingRequest<
                Message = ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
            >,
        ) -> std::result::Result<
            tonic::Response<
                tonic::codec::Streaming<
                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                >,
            >,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = ::tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/kuma.mesh.v1alpha1.KDSSyncService/GlobalToZoneSync",
            );
            let mut req = request.into_streaming_request();
            req.extensions_mut()
                .insert(
                    GrpcMethod::new(
                        "kuma.mesh.v1alpha1.KDSSyncService",
                        "GlobalToZoneSync",
                    ),
                );
            self.inner.streaming(req, path, codec).await
        }
        pub async fn zone_to_global_sync(
            &mut self,
            request: impl tonic::IntoStreamingRequest<
                Message = ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
            >,
        ) -> std::result::Result<
            tonic::Response<
                tonic::codec::Streaming<
                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
                >,
            >,
            tonic::Status,
        > {
            self.inner
                .ready()
                .await
                .map_err(|e| {
                    tonic::Status::unknown(
                        format!("Service was not ready: {}", e.into()),
                    )
                })?;
            let codec = ::tonic_prost::ProstCodec::default();
            let path = http::uri::PathAndQuery::from_static(
                "/kuma.mesh.v1alpha1.KDSSyncService/ZoneToGlobalSync",
            );
            let mut req = request.into_streaming_request();
            req.extensions_mut()
                .insert(
                    GrpcMethod::new(
                        "kuma.mesh.v1alpha1.KDSSyncService",
                        "ZoneToGlobalSync",
                    ),
                );
            self.inner.streaming(req, path, codec).await
        }
    }
}
/// Generated server implementations.
pub mod k_d_s_sync_service_server {
    #![allow(
        unused_variables,
        dead_code,
        missing_docs,
        clippy::wildcard_imports,
        clippy::let_unit_value,
    )]
    use tonic::codegen::*;
    /// Generated trait containing gRPC methods that should be implemented for use with KDSSyncServiceServer.
    #[async_trait]
    pub trait KDSSyncService: std::marker::Send + std::marker::Sync + 'static {
        /// Server streaming response type for the GlobalToZoneSync method.
        type GlobalToZoneSyncStream: tonic::codegen::tokio_stream::Stream<
                Item = std::result::Result<
                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                    tonic::Status,
                >,
            >
            + std::marker::Send
            + 'static;
        async fn global_to_zone_sync(
            &self,
            request: tonic::Request<
                tonic::Streaming<
                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
                >,
            >,
        ) -> std::result::Result<
            tonic::Response<Self::GlobalToZoneSyncStream>,
            tonic::Status,
        >;
        /// Server streaming response type for the ZoneToGlobalSync method.
        type ZoneToGlobalSyncStream: tonic::codegen::tokio_stream::Stream<
                Item = std::result::Result<
                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
                    tonic::Status,
                >,
            >
            + std::marker::Send
            + 'static;
        async fn zone_to_global_sync(
            &self,
            request: tonic::Request<
                tonic::Streaming<
                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                >,
            >,
        ) -> std::result::Result<
            tonic::Response<Self::ZoneToGlobalSyncStream>,
            tonic::Status,
        >;
    }
    /// Resource sync between global and a zone, both ways, as Envoy delta xDS.
    #[derive(Debug)]
    pub struct KDSSyncServiceServer<T> {
        inner: Arc<T>,
        accept_compression_encodings: EnabledCompressionEncodings,
        send_compression_encodings: EnabledCompressionEncodings,
        max_decoding_message_size: Option<usize>,
        max_encoding_message_size: Option<usize>,
    }
    impl<T> KDSSyncServiceServer<T> {
        pub fn new(inner: T) -> Self {
            Self::from_arc(Arc::new(inner))
        }
        pub fn from_arc(inner: Arc<T>) -> Self {
            Self {
                inner,
                accept_compression_encodings: Default::default(),
                send_compression_encodings: Default::default(),
                max_decoding_message_size: None,
                max_encoding_message_size: None,
            }
        }
        pub fn with_interceptor<F>(
            inner: T,
            interceptor: F,
        ) -> InterceptedService<Self, F>
        where
            F: tonic::service::Interceptor,
        {
            InterceptedService::new(Self::new(inner), interceptor)
        }
        /// Enable decompressing requests with the given encoding.
        #[must_use]
        pub fn accept_compressed(mut self, encoding: CompressionEncoding) -> Self {
            self.accept_compression_encodings.enable(encoding);
            self
        }
        /// Compress responses with the given encoding, if the client supports it.
        #[must_use]
        pub fn send_compressed(mut self, encoding: CompressionEncoding) -> Self {
            self.send_compression_encodings.enable(encoding);
            self
        }
        /// Limits the maximum size of a decoded message.
        ///
        /// Default: `4MB`
        #[must_use]
        pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
            self.max_decoding_message_size = Some(limit);
            self
        }
        /// Limits the maximum size of an encoded message.
        ///
        /// Default: `usize::MAX`
        #[must_use]
        pub fn max_encoding_message_size(mut self, limit: usize) -> Self {
            self.max_encoding_message_size = Some(limit);
            self
        }
    }
    impl<T, B> tonic::codegen::Service<http::Request<B>> for KDSSyncServiceServer<T>
    where
        T: KDSSyncService,
        B: Body + std::marker::Send + 'static,
        B::Error: Into<StdError> + std::marker::Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;
        fn poll_ready(
            &mut self,
            _cx: &mut Context<'_>,
        ) -> Poll<std::result::Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            match req.uri().path() {
                "/kuma.mesh.v1alpha1.KDSSyncService/GlobalToZoneSync" => {
                    #[allow(non_camel_case_types)]
                    struct GlobalToZoneSyncSvc<T: KDSSyncService>(pub Arc<T>);
                    impl<
                        T: KDSSyncService,
                    > tonic::server::StreamingService<
                        ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
                    > for GlobalToZoneSyncSvc<T> {
                        type Response = ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
                        type ResponseStream = T::GlobalToZoneSyncStream;
                        type Future = BoxFuture<
                            tonic::Response<Self::ResponseStream>,
                            tonic::Status,
                        >;
                        fn call(
                            &mut self,
                            request: tonic::Request<
                                tonic::Streaming<
                                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest,
                                >,
                            >,
                        ) -> Self::Future {
                            let inner = Arc::clone(&self.0);
                            let fut = async move {
                                <T as KDSSyncService>::global_to_zone_sync(&inner, request)
                                    .await
                            };
                            Box::pin(fut)
                        }
                    }
                    let accept_compression_encodings = self.accept_compression_encodings;
                    let send_compression_encodings = self.send_compression_encodings;
                    let max_decoding_message_size = self.max_decoding_message_size;
                    let max_encoding_message_size = self.max_encoding_message_size;
                    let inner = self.inner.clone();
                    let fut = async move {
                        let method = GlobalToZoneSyncSvc(inner);
                        let codec = ::tonic_prost::ProstCodec::default();
                        let mut grpc = tonic::server::Grpc::new(codec)
                            .apply_compression_config(
                                accept_compression_encodings,
                                send_compression_encodings,
                            )
                            .apply_max_message_size_config(
                                max_decoding_message_size,
                                max_encoding_message_size,
                            );
                        let res = grpc.streaming(method, req).await;
                        Ok(res)
                    };
                    Box::pin(fut)
                }
                "/kuma.mesh.v1alpha1.KDSSyncService/ZoneToGlobalSync" => {
                    #[allow(non_camel_case_types)]
                    struct ZoneToGlobalSyncSvc<T: KDSSyncService>(pub Arc<T>);
                    impl<
                        T: KDSSyncService,
                    > tonic::server::StreamingService<
                        ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                    > for ZoneToGlobalSyncSvc<T> {
                        type Response = ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
                        type ResponseStream = T::ZoneToGlobalSyncStream;
                        type Future = BoxFuture<
                            tonic::Response<Self::ResponseStream>,
                            tonic::Status,
                        >;
                        fn call(
                            &mut self,
                            request: tonic::Request<
                                tonic::Streaming<
                                    ::envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                                >,
                            >,
                        ) -> Self::Future {
                            let inner = Arc::clone(&self.0);
                            let fut = async move {
                                <T as KDSSyncService>::zone_to_global_sync(&inner, request)
                                    .await
                            };
                            Box::pin(fut)
                        }
                    }
                    let accept_compression_encodings = self.accept_compression_encodings;
                    let send_compression_encodings = self.send_compression_encodings;
                    let max_decoding_message_size = self.max_decoding_message_size;
                    let max_encoding_message_size = self.max_encoding_message_size;
                    let inner = self.inner.clone();
                    let fut = async move {
                        let method = ZoneToGlobalSyncSvc(inner);
                        let codec = ::tonic_prost::ProstCodec::default();
                        let mut grpc = tonic::server::Grpc::new(codec)
                            .apply_compression_config(
                                accept_compression_encodings,
                                send_compression_encodings,
                            )
                            .apply_max_message_size_config(
                                max_decoding_message_size,
                                max_encoding_message_size,
                            );
                        let res = grpc.streaming(method, req).await;
                        Ok(res)
                    };
                    Box::pin(fut)
                }
                _ => {
                    Box::pin(async move {
                        let mut response = http::Response::new(
                            tonic::body::Body::default(),
                        );
                        let headers = response.headers_mut();
                        headers
                            .insert(
                                tonic::Status::GRPC_STATUS,
                                (tonic::Code::Unimplemented as i32).into(),
                            );
                        headers
                            .insert(
                                http::header::CONTENT_TYPE,
                                tonic::metadata::GRPC_CONTENT_TYPE,
                            );
                        Ok(response)
                    })
                }
            }
        }
    }
    impl<T> Clone for KDSSyncServiceServer<T> {
        fn clone(&self) -> Self {
            let inner = self.inner.clone();
            Self {
                inner,
                accept_compression_encodings: self.accept_compression_encodings,
                send_compression_encodings: self.send_compression_encodings,
                max_decoding_message_size: self.max_decoding_message_size,
                max_encoding_message_size: self.max_encoding_message_size,
            }
        }
    }
    /// Generated gRPC service name
    pub const SERVICE_NAME: &str = "kuma.mesh.v1alpha1.KDSSyncService";
    impl<T> tonic::server::NamedService for KDSSyncServiceServer<T> {
        const NAME: &'static str = SERVICE_NAME;
    }
}
